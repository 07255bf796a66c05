"""Checks of the deployment files: Dockerfile, compose files, nginx, Kubernetes."""
