"""A toy fsd_gs plugin: one method (methods.py), one noise kind (noise.py), one export format (export.py).

Each module imports only the ``base`` module of its axis (the registries load plugins while their package
is still being imported).
"""
