"""A small real Flask app: routing, request context and JSON serialisation on every request."""

from __future__ import annotations

from flask import Flask, Response, jsonify

app = Flask(__name__)


@app.get("/")
def index() -> Response:
    return jsonify(message="Hello, web!", framework="flask")
