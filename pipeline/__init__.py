"""embedpipe's library: tables of text in, tables of vectors out. No Prefect in here."""

__version__ = "0.1.0"
