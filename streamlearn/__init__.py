"""streamlearn: online machine learning on Kafka with Faust and River."""

__version__ = "0.1.0"
__all__ = ["__version__"]
