"""kfactory: a Hydra-composed experiment runner for the Keras applications.

This package imports nothing heavy at the top: TensorFlow and Keras load only
inside the functions that train, evaluate or predict.
"""

__version__ = "0.1.0"
