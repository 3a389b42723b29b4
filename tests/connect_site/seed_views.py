"""The seed's Django example (seeds/000, "Web Development using PyPump"), on Clarion.

Changed from the seed, line by line (every change is marked ``# CHANGED`` below):

* the imports: ``clarion.django.connect.WebPump`` for ``pypump.WebPump``, this site's
  ``PumpModel`` for ``app.models``, ``django.core.exceptions`` for the non-existent
  ``django.exceptions``;
* the seed does not run as printed, whatever library is under it, so these are fixed too:
  a missing comma after ``secret=webfinger.secret`` (a SyntaxError); ``token_secret`` and
  ``pump`` used where they are undefined (NameError: ``webfinger.token_secret``,
  ``webfinger.key``, ``webfinger.secret``); the model instance put in the session (not JSON
  serialisable: its ``webfinger`` string instead); ``webfiger=`` (a field that does not exist);
  the request token saved over the client secret (``webfinger.secret`` → ``token_secret``);
  ``get_registration()``'s three values unpacked into two after the verifier (the tokens are
  ``get_token()``'s); ``"/profile/{webfinger}".format(webfinger)`` (a KeyError); and
  ``request.GET["token"]``/``["verifier"]``, which pump.io sends as ``oauth_token`` and
  ``oauth_verifier``.

The misspelt ``get_registeration()`` and ``get_registrat()`` are kept: they work, with a
DeprecationWarning naming ``get_registration()`` and ``get_token()``.
"""

from django.core.exceptions import ObjectDoesNotExist  # CHANGED: was django.exceptions
from django.shortcuts import redirect

from clarion.django.connect import WebPump  # CHANGED: was pypump
from connect_site.pumpapp.models import PumpModel  # CHANGED: was app.models

CALLBACK = "http://my_app.com/oauth/authorize"  # the tests point it at the live server


def pump_view(request, webfinger):
    try:
        webfinger = PumpModel.objects.get(webfinger=webfinger)
    except ObjectDoesNotExist:
        webfinger = PumpModel.objects.create(webfinger=webfinger)
        webfinger.save()

    # make the WebPump object
    if webfinger.oauth_credentials:
        pump = WebPump(
                webfinger.webfinger,
                client_type="web",
                client_name="DjangoApp",
                key=webfinger.key,
                secret=webfinger.secret,  # CHANGED: the comma was missing
                token=webfinger.token,
                token_secret=webfinger.token_secret,  # CHANGED: was an undefined name
                callback_uri=CALLBACK
                )
    else:
        pump = WebPump(
                webfinger.webfinger,
                client_type="web",
                client_name="DjangoApp",
                callback_uri=CALLBACK
                )

    # save the client credentials as they won't change
    webfinger.key, webfinger.secret, webfinger.expirey = pump.get_registeration()

    # save the request tokens so we can identify the authorize callback
    webfinger.token, webfinger.token_secret = pump.get_registrat()  # CHANGED: was .secret

    # save the model back to db
    webfinger.save()

    if pump.url is not None:
        # The user must go to this url and will get bounced back to our
        # callback_uri we specified above and add the webfinger as a
        # session cookie.
        request.session["webfinger"] = webfinger.webfinger  # CHANGED: was the instance
        return redirect(pump.url)

    # okay oauth completed successfully, we can just save the oauth
    # credentials and redirect.
    webfinger.token, webfinger.token_secret = pump.get_token()  # CHANGED: get_registration
    webfinger.save()

    # redirect to profile!
    return redirect("/profile/{webfinger}".format(webfinger=webfinger.webfinger))  # noqa: UP032  # CHANGED


def authorize_view(request):
    """ This is the redirect when authorization is complete """
    webfinger = request.session.get("webfinger", None)
    # CHANGED: pump.io sends oauth_token and oauth_verifier
    token, verifier = request.GET["oauth_token"], request.GET["oauth_verifier"]

    try:
        webfinger = PumpModel.objects.get(
                webfinger=webfinger,  # CHANGED: was webfiger
                token=token
                )

    except ObjectDoesNotExist:
        return redirect("/error") # tell them this is a invalid request

    pump = WebPump(
            webfinger.webfinger,
            client_name="DjangoApp",
            client_type="web",
            key=webfinger.key,  # CHANGED: was pump.key (undefined)
            secret=webfinger.secret,  # CHANGED: was pump.secret (undefined)
            )

    pump.verifier(verifier)

    # Save the access tokens back now.
    webfinger.token, webfinger.token_secret = pump.get_token()  # CHANGED: get_registration
    webfinger.save()

    # and redirect to their profile
    return redirect("/profile")
