"""Orthanc: its settings (orthanc_settings.py), ``connect`` (connect.py) to one node (client.py) or several
(nodes.py) behind one interface (api.py), and its /changes feed (changes.py)."""
