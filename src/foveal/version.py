"""The version of foveal, on the ground floor so that any module can name it without importing the package root.

``pyproject.toml`` states the same version (``tests/test_version.py`` checks that they agree).
"""

__version__ = "0.1.0"
