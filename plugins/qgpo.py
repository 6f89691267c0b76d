"""Work in progress: registers no half yet."""
