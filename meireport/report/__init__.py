"""The report: params, the stages every notebook calls, the run engine, the book, the CLI.

Notebooks (``notebooks/``) and site pages (``pages/``) are package data.
"""
