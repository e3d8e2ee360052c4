"""The web console and REST API of the node (``[web]`` in the config), served in the node's process.

``app.create_app`` builds the FastAPI application; ``server.WebServer`` runs it with uvicorn in a
thread of ``m2unet-node run``; ``auth`` holds logins and sessions; ``api`` the ``/api`` routes;
``pages`` the HTML pages (``templates/``, ``static/``); ``series`` what a series page shows;
``passwords`` the ``m2unet-node web set-password`` command.
"""
