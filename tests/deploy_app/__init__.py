"""The Django app behind nginx in tests/test_deploy_nginx.py and bench/nginx.py, and the code
that runs the shipped nginx site (deploy/nginx) on free ports (``deploy_app.nginx``).

The app (``deploy_app.settings``, served by gunicorn) is tests/grip_apps's GRIP views under
``/grip/`` (reached through the hub's GRIP proxy), plus:

* ``/``: the hub's demo chat page (src/clarion/hub/static/demo.html), served by Django;
* ``POST /demo/ticket``: a one-time ticket for ``{"name": ...}``, which Django gets from the
  hub's server API, as a real app would from its login-protected view;
* ``/whoami``: what Django sees of the request (REMOTE_ADDR, X-Forwarded-For, -Proto, Host).

Environment: ``DEPLOY_HUB_URL`` (the hub's own address, for the server API), ``DEPLOY_API_KEY``,
and grip_apps's ``GRIP_CONTROL_URI``/``GRIP_KEY``.
"""
