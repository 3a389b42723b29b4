"""The dashboard's forms: durian's two steps (pick an event type, then a listener form with one
filter row per field the event provides), recovering, and API keys."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django import forms
from django.utils import timezone

from clarion.django import match as _match
from clarion.django.conf import webhook_settings
from clarion.django.hooks import Hook, hooks
from clarion.errors import AddressRejected
from clarion.webhooks import limits

CONDITIONS = [
    ("any", "anything"),
    ("is", "is"),
    ("startswith", "starts with"),
    ("endswith", "ends with"),
    ("contains", "contains"),
    ("like", "matches regex"),
    ("in", "is one of (comma-separated)"),
    ("gt", "greater than"),
    ("gte", "greater or equal"),
    ("lt", "less than"),
    ("lte", "less or equal"),
    ("exists", "exists"),
    ("absent", "is absent"),
]
VALUE_HELP = ("Numbers, true, false and null are read as JSON; quote them (\"42\") to mean "
              "the text.")
FREE_ROWS = 3  # filter rows offered for a hook that does not declare its fields


class SelectHookForm(forms.Form):  # type: ignore[misc]
    type = forms.ChoiceField(label="Event type")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["type"].choices = hooks.as_choices()


def scalar(text: str) -> Any:
    """A form value: JSON scalars as such (``42``, ``true``, ``"42"``), anything else as text."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return text if isinstance(value, dict | list) else value


class MatchRowForm(forms.Form):  # type: ignore[misc]
    """One filter row: a condition on one field. ``field`` is fixed when the hook declares its
    fields (``provides_args``) and typed in otherwise."""

    field = forms.CharField(required=False, max_length=200)
    condition = forms.ChoiceField(choices=CONDITIONS, initial="any")
    value = forms.CharField(required=False, max_length=limits.MAX_FILTER_BYTES // 8,
                            help_text=VALUE_HELP)

    def __init__(self, *args: Any, fixed_field: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fixed_field = fixed_field
        if fixed_field is not None:
            self.fields["field"].widget = forms.HiddenInput()
            self.fields["field"].initial = fixed_field

    @property
    def field_name(self) -> str:
        return self.fixed_field or str(self.cleaned_data.get("field") or "")

    def clean(self) -> dict[str, Any]:
        data: dict[str, Any] = super().clean()
        condition = data.get("condition", "any")
        try:
            data["matcher"] = self.build(condition, data.get("value") or "")
        except (ValueError, TypeError) as exc:
            self.add_error("value", str(exc))
        if data.get("matcher") is not None and not self.field_name:
            self.add_error("field", "name the field this condition is on")
        return data

    @staticmethod
    def build(condition: str, text: str) -> _match.Matcher | None:
        if condition == "any":
            return None  # no condition: the listener gets every value
        if condition == "exists":
            return _match.Exists(True)
        if condition == "absent":
            return _match.Exists(False)
        if not text:
            raise ValueError("this condition needs a value")
        if condition in ("startswith", "endswith", "like"):
            return _match.from_json({"op": condition, "value": text})
        if condition == "in":
            return _match.In([scalar(part.strip()) for part in text.split(",")])
        return _match.from_json({"op": condition, "value": scalar(text)})


class ListenerForm(forms.Form):  # type: ignore[misc]
    url = forms.CharField(label="URL", max_length=limits.MAX_URL_LENGTH,
                          widget=forms.URLInput(attrs={"placeholder": "https://…"}))
    description = forms.CharField(required=False, max_length=limits.MAX_DESCRIPTION)
    rate_limit = forms.IntegerField(label="Rate limit (per second)", required=False,
                                    min_value=1, max_value=limits.MAX_RATE_LIMIT)
    timeout = forms.FloatField(label="Timeout (s)", required=False, min_value=limits.MIN_TIMEOUT,
                               max_value=limits.MAX_TIMEOUT)
    fifo = forms.BooleanField(label="Strict order (one at a time)", required=False)

    def clean_url(self) -> str:
        url = str(self.cleaned_data["url"]).strip()
        try:
            webhook_settings().policy().parse_url(url)
        except AddressRejected as exc:
            raise forms.ValidationError(str(exc)) from None
        return url


def match_rows(hook: Hook, data: Any = None) -> list[MatchRowForm]:
    fields: Iterable[str | None] = sorted(hook.filter_fields() or ()) or [None] * FREE_ROWS
    return [MatchRowForm(data, prefix=f"m{i}", fixed_field=name)
            for i, name in enumerate(fields)]


def conditions(rows: list[MatchRowForm]) -> dict[str, _match.Matcher]:
    out: dict[str, _match.Matcher] = {}
    for row in rows:
        matcher = row.cleaned_data.get("matcher")
        if matcher is not None:
            out[row.field_name] = matcher
    return out


class RecoverForm(forms.Form):  # type: ignore[misc]
    since = forms.DateTimeField(
        label="Failed since", input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S",
                                             "%Y-%m-%d %H:%M", "%Y-%m-%d"],
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}))

    def clean_since(self) -> datetime:
        since: datetime = self.cleaned_data["since"]
        return since if timezone.is_aware(since) else timezone.make_aware(since)


class ApiKeyForm(forms.Form):  # type: ignore[misc]
    name = forms.CharField(max_length=100, required=False,
                           widget=forms.TextInput(attrs={"placeholder": "what uses it"}))
