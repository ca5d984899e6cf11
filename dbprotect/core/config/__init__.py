"""Configuration: ``model`` (the shape of ``dbprotect.yaml``), ``load`` (reading it, its error wording),
``isolation`` (which credentials a deployment may hold, reading a DSN).

Nothing is re-exported here: a package ``__init__`` runs whenever any submodule is imported, and
the store imports ``model`` while ``model`` imports the retention policy; one import path per
name keeps that chain short and keeps "where is X defined" answerable by reading the import.
"""
