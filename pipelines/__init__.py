"""Diffusers glue for clipcond, installed as ``clipcond.pipelines``."""
