"""The Django pieces behind nginx in tests/test_deploy_nginx.py, and the code that runs the
shipped nginx site (deploy/nginx) on free ports (``deploy_app.nginx``, also bench/nginx.py's).

* ``deploy_app.chat_settings``: examples/chat as it is (its settings, configured by its CHAT_*
  environment) with ``/whoami`` added (``chat_urls``): what Django sees of a request
  (REMOTE_ADDR, X-Forwarded-For, -Proto, Host, is_secure). Served by gunicorn as
  ``chatsite.wsgi:application``; nginx sends it everything that is not the hub's.
* ``deploy_app.settings``: tests/grip_apps's GRIP views under ``/grip/``, a second gunicorn
  that only the hub's GRIP proxy reaches (its routes file). Two Django projects cannot share
  one process (settings are global), and a GRIP origin named in the proxy's routes is how a
  site runs one anyway. Environment: grip_apps's ``GRIP_CONTROL_URI``/``GRIP_KEY``.
"""
