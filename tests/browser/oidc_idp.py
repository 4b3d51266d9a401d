"""A minimal OpenID Connect provider for the login test: authorization-code flow with a
login form, a token endpoint that checks the client's secret and the code, and a
userinfo endpoint. Real HTTP, served by uvicorn on a free port; nothing is mocked on
the apps' side (Panel's generic OAuth handler talks to it as to any provider)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import secrets
import time
import urllib.parse

from fastapi import FastAPI, Form, Header, HTTPException
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

USERS = {"ada": {"password": "analytical-engine", "email": "ada@example.com", "name": "Ada"}}


def sign_in(page, user: str = "ada", password: str | None = None) -> None:
    """Fill this provider's sign-in form on a Playwright ``page`` and submit it (the
    user's own password unless ``password`` says otherwise)."""
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", USERS[user]["password"] if password is None else password)
    page.click("button[type=submit]")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def id_token(claims: dict, key: bytes) -> str:
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims).encode())
    sig = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(sig)}"


def create_idp(issuer: str, client_id: str, client_secret: str) -> FastAPI:
    app = FastAPI(title="test OIDC provider")
    codes: dict[str, dict] = {}
    tokens: dict[str, str] = {}
    app.state.logins = []

    def form(params: dict, error: str = "") -> HTMLResponse:
        hidden = "".join(f'<input type="hidden" name="{k}" value="{html.escape(v)}">'
                         for k, v in params.items())  # fmt: skip
        return HTMLResponse(
            f"<html><body><h1>Test IdP sign-in</h1><p class='error'>{html.escape(error)}</p>"
            f"<form method='post' action='/authorize'>{hidden}"
            "<input name='username' placeholder='user'>"
            "<input name='password' type='password' placeholder='password'>"
            "<button type='submit'>Sign in</button></form></body></html>",
            status_code=401 if error else 200,
        )

    @app.get("/authorize")
    def authorize(client_id: str, redirect_uri: str, state: str = "", response_type: str = "code",
                  scope: str = ""):  # fmt: skip
        if client_id != app.state.client_id or response_type != "code":
            raise HTTPException(400, "unknown client or response type")
        return form({"client_id": client_id, "redirect_uri": redirect_uri, "state": state})

    @app.post("/authorize")
    def login(username: str = Form(""), password: str = Form(""), client_id: str = Form(...),
              redirect_uri: str = Form(...), state: str = Form("")):  # fmt: skip
        user = USERS.get(username)
        params = {"client_id": client_id, "redirect_uri": redirect_uri, "state": state}
        if user is None or not secrets.compare_digest(user["password"], password):
            return form(params, "wrong user or password")
        code = secrets.token_urlsafe(16)
        codes[code] = {"user": username, "redirect_uri": redirect_uri, "t": time.time()}
        app.state.logins.append(username)
        q = urllib.parse.urlencode({"code": code, "state": state})
        return RedirectResponse(f"{redirect_uri}{'&' if '?' in redirect_uri else '?'}{q}", 302)

    @app.post("/token")
    def token(grant_type: str = Form(...), code: str = Form(...), client_id: str = Form(...),
              client_secret: str = Form(...), redirect_uri: str = Form("")):  # fmt: skip
        if (client_id, client_secret) != (app.state.client_id, app.state.client_secret):
            return JSONResponse({"error": "invalid_client"}, 401)
        grant = codes.pop(code, None)
        if (
            grant_type != "authorization_code"
            or grant is None
            or (redirect_uri and redirect_uri != grant["redirect_uri"])
        ):
            return JSONResponse({"error": "invalid_grant"}, 400)
        user = USERS[grant["user"]]
        access = secrets.token_urlsafe(24)
        tokens[access] = grant["user"]
        now = int(time.time())
        claims = {"iss": issuer, "sub": grant["user"], "aud": client_id, "iat": now,
                  "exp": now + 3600, "email": user["email"], "name": user["name"]}  # fmt: skip
        return {"access_token": access, "token_type": "Bearer", "expires_in": 3600,
                "id_token": id_token(claims, client_secret.encode())}  # fmt: skip

    @app.get("/userinfo")
    def userinfo(authorization: str = Header("")):
        user = tokens.get(authorization.removeprefix("Bearer "))
        if user is None:
            raise HTTPException(401, "bad token")
        return {"sub": user, "email": USERS[user]["email"], "name": USERS[user]["name"]}

    app.state.client_id, app.state.client_secret = client_id, client_secret
    return app
