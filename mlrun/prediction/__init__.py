"""What `mlrun predict` is made of: the trained model and its preprocessing, readers for new inputs, outputs."""
