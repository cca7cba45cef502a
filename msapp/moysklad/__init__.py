"""Clients for MoySklad's Phone API 1.0 and JSON API 1.2, with their formats, errors and limits."""
from msapp.moysklad.errors import MoySkladError, RetryPolicy
from msapp.moysklad.json_api import JsonApi
from msapp.moysklad.limiter import BreakerOpen, Limiter, RateLimited
from msapp.moysklad.phone_api import PhoneApi

__all__ = ["BreakerOpen", "JsonApi", "Limiter", "MoySkladError", "PhoneApi", "RateLimited", "RetryPolicy"]
