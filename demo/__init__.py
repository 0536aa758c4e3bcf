"""Gradio demo page over export folders or a running server (issue: demo)."""
