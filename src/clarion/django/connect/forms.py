"""The forms of the connect views."""

from __future__ import annotations

from django import forms


class ConnectForm(forms.Form):  # type: ignore[misc]
    address = forms.CharField(
        max_length=320, label="Your address",
        help_text="alice@pump.example, @bob@mastodon.example, or your profile's URL",
        widget=forms.TextInput(attrs={"autocomplete": "username", "spellcheck": "false",
                                      "placeholder": "you@your.server"}))

    def clean_address(self) -> str:
        value = str(self.cleaned_data["address"]).strip()
        if not value or any(c.isspace() for c in value):
            raise forms.ValidationError("Give one address, without spaces.")
        return value


class EmailForm(forms.Form):  # type: ignore[misc]
    email = forms.EmailField(label="Your email address", max_length=254)
