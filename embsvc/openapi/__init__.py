from embsvc.openapi.document import build_openapi

__all__ = ["build_openapi"]
