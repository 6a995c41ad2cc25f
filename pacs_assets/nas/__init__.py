"""NAS devices: the source interface (base), the one walker (walk), the folder watch (watch), and one
subpackage per NAS kind, listed in registry.py."""
