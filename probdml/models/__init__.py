"""Models: backbones, embedding heads, small networks."""
