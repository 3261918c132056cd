"""Figures, one module per report page; every ``plot_*`` returns a matplotlib ``Figure``."""
