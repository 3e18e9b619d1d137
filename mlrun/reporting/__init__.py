"""What `mlrun compare` is made of: reading run directories, their differences, curves and the HTML report."""
