"""Orthanc: the REST client (client.py) and its /changes feed (changes.py)."""
