// The console's few scripts. Every page works without them: they submit filters on change,
// show the form fields that apply, copy a generated secret, ask before bulk retries, and
// reload a page that waits for an attempt (bounded by the server, which stops asking).
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  for (const el of document.querySelectorAll("[data-autosubmit]")) {
    el.addEventListener("change", () => el.form && el.form.requestSubmit());
  }

  for (const btn of document.querySelectorAll("[data-copy]")) {
    btn.addEventListener("click", async () => {
      const target = document.getElementById(btn.dataset.copy);
      if (!target) return;
      try {
        await navigator.clipboard.writeText(target.textContent.trim());
        btn.textContent = "Copied";
      } catch {
        const range = document.createRange();
        range.selectNodeContents(target);
        const sel = window.getSelection();
        sel.removeAllRanges();
        sel.addRange(range);
        btn.textContent = "Selected: press Ctrl+C";
      }
    });
  }

  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (e) => {
      if (!window.confirm(form.dataset.confirm)) e.preventDefault();
    });
  }

  // Fields shown when a radio has a value: data-when="auth=signature,header".
  const form = document.getElementById("endpoint-form");
  if (form) {
    const update = () => {
      for (const el of form.querySelectorAll("[data-when]")) {
        const [name, values] = el.dataset.when.split("=");
        const checked = form.querySelector(`input[name="${name}"]:checked`);
        let show = !!checked && values.split(",").includes(checked.value);
        // A secret's source matters only when there is a secret.
        if (show && name === "source") {
          const auth = form.querySelector('input[name="auth"]:checked');
          show = !!auth && auth.value !== "none";
        }
        el.hidden = !show;
      }
    };
    form.addEventListener("change", update);
    update();
  }

  const refresh = document.querySelector('meta[name="console-refresh"]');
  if (refresh) {
    const seconds = Number(refresh.content) || 2;
    setTimeout(() => window.location.reload(), seconds * 1000);
  }
});
