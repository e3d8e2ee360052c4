// The console's behaviour: the login form, and the forms and buttons that call the REST API.
// A form or button with data-api="URL" data-method="POST|DELETE" sends its fields as JSON with
// the session's CSRF token; on success the page reloads (data-then: go there instead; data-stay:
// only show the answer), on failure the problems are shown next to it.
"use strict";

function csrfToken() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

function messageFor(element) {
  const scope = element.closest("form, section, main") || document.body;
  return scope.querySelector(".message[role=status]");
}

function show(element, text, isError) {
  const box = messageFor(element);
  if (!box) { if (isError) alert(text); return; }
  box.textContent = text;
  box.classList.toggle("error", !!isError);
}

function describe(body) {
  if (!body) return "failed";
  let text = body.error || body.reason || JSON.stringify(body);
  if (body.problems) {
    text += ": " + body.problems.map(p => p.key + " " + (p.value === null || p.value === undefined ? "" : JSON.stringify(p.value) + " ") + p.reason).join("; ");
  }
  return text;
}

async function call(method, url, payload) {
  const options = { method, headers: { "X-CSRF-Token": csrfToken() }, credentials: "same-origin" };
  if (payload !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(payload);
  }
  const response = await fetch(url, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  return { ok: response.ok, status: response.status, body };
}

function formPayload(form) {
  const payload = {};
  for (const input of form.querySelectorAll("input[name]")) {
    if (input.value === "") continue;
    payload[input.name] = input.type === "number" ? Number(input.value) : input.value;
  }
  return payload;
}

async function act(element, payload) {
  if (element.dataset.confirm && !confirm(element.dataset.confirm)) return;
  const result = await call(element.dataset.method || "POST", element.dataset.api, payload);
  if (result.status === 401) { window.location = "/login"; return; }
  if (!result.ok) { show(element, describe(result.body), true); return; }
  if (element.dataset.stay) { show(element, describe(result.body), false); return; }
  if (element.dataset.then) { window.location = element.dataset.then; return; }
  window.location.reload();
}

document.addEventListener("DOMContentLoaded", () => {
  const login = document.getElementById("login-form");
  if (login) {
    login.addEventListener("submit", async (event) => {
      event.preventDefault();
      const result = await call("POST", "/api/session", formPayload(login));
      if (result.ok) { window.location = "/"; } else { show(login, describe(result.body), true); }
    });
  }
  for (const form of document.querySelectorAll("form[data-api]")) {
    form.addEventListener("submit", (event) => { event.preventDefault(); act(form, formPayload(form)); });
  }
  for (const button of document.querySelectorAll("button[data-api]")) {
    button.addEventListener("click", () => act(button));
  }
});
