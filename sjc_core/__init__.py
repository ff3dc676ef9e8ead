"""sjc: lift pretrained 2D diffusion models to 3D with Score Jacobian Chaining."""

__version__ = "0.1.0"
