"""Statistics, figures and README tables about models and their quantization."""
