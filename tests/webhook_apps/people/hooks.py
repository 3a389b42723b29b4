"""The durian text's hooks, registered as its README does."""

from django.db.models import signals

from clarion.django.hooks import Hook, ModelHook, hooks
from webhook_apps.people.models import Person


class PersonHook(ModelHook):
    name = "person"
    model = Person
    signal = signals.post_save
    provides_args = ["name", "address"]


class MyHook(Hook):
    name = "myhook"
    provides_args = ["name", "address"]


hooks.register(PersonHook)
hooks.register(MyHook)
