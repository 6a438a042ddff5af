"""The package version, in a leaf module so that any module can read it without importing the
package face (``radi_fast/__init__.py``); setup.py reads it from here too."""
__version__ = "0.1.0"
