"""The Medical Image Diagnostics API's database: its models, settings and release-safety operations."""
