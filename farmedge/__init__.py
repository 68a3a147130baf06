"""farmedge: farm sensor data from the field to the people who act on it."""

__version__ = "0.1.0"
