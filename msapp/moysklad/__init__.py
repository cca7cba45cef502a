"""Clients for MoySklad's Phone API 1.0 and JSON API 1.2, with their formats, errors and limits."""
from .errors import MoySkladError, RetryPolicy
from .json_api import JsonApi
from .limiter import BreakerOpen, Limiter, RateLimited
from .phone_api import PhoneApi

__all__ = ["BreakerOpen", "JsonApi", "Limiter", "MoySkladError", "PhoneApi", "RateLimited", "RetryPolicy"]
