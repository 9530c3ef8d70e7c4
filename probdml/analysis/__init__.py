"""Analysis tools: gradient analysis and plots of evaluation results."""
