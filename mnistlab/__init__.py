"""mnistlab: experiments on the MNIST family from YAML configs."""

__version__ = "0.1.0"
