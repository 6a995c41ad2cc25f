from setuptools import find_packages, setup

# Metadata lives in pyproject.toml; setup.py stays for tools (and people) that expect it,
# as in dagster's examples/project_fully_featured.
setup(packages=find_packages(exclude=["pacs_assets_tests", "benchmarks"]))
