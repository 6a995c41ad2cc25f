from setuptools import find_packages, setup

# Metadata lives in pyproject.toml; setup.py stays for tools (and people) that expect it,
# as in dagster's examples/project_fully_featured.
# Only the product: the tests, their service harness and the benchmarks never ship in the wheel.
setup(packages=find_packages(include=["pacs_assets", "pacs_assets.*"]))
