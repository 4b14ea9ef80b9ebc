"""The modeling code an export writes next to its weights (``trust_remote_code=True`` loads it).

These two files are copied verbatim into every export folder whose head has no Hugging Face
class; they import only torch and transformers, never transferlab.
"""
