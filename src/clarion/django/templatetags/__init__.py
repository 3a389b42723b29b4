"""Template tag libraries of ``clarion.django`` (``{% load clarion %}``)."""
