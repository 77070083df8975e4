// Progressive enhancement of the upload form: several files, drag and drop, results without a
// page reload. Each file is sent on its own to the JSON API (so one bad file costs only its own
// card); without JavaScript the form posts to "/" and the server renders the same cards.
"use strict";
(function () {
  const form = document.getElementById("upload");
  const input = document.getElementById("image");
  const drop = document.getElementById("drop");
  const results = document.getElementById("results");
  if (!form || !window.fetch || !window.FormData) return;

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function card(file) {
    const article = el("article", "result pending");
    const img = el("img", "xray");
    img.alt = "uploaded chest X-ray";
    img.addEventListener("error", () => img.remove());  // a DICOM: the browser cannot show it
    img.src = URL.createObjectURL(file);
    const answer = el("div", "answer");
    answer.append(el("p", "file", file.name), el("h2", "predicted", "Classifying\u2026"));
    article.append(img, answer);
    return article;
  }

  function show(article, classes, probs) {
    const answer = article.querySelector(".answer");
    let best = 0;
    probs.forEach((p, i) => { if (p > probs[best]) best = i; });
    const title = answer.querySelector(".predicted");
    title.textContent = classes[best];
    title.dataset.class = classes[best];
    const list = el("ul", "bars");
    classes.forEach((name, i) => {
      const item = el("li", "bar");
      item.dataset.class = name;
      item.dataset.p = String(probs[i]);
      const bar = el("progress");
      bar.max = 1;
      bar.value = probs[i];
      item.append(el("span", "name", name), bar, el("span", "pct", (100 * probs[i]).toFixed(1) + "%"));
      list.append(item);
    });
    answer.append(list);
    article.classList.remove("pending");
  }

  function fail(article, message) {
    const answer = article.querySelector(".answer");
    answer.querySelector(".predicted").remove();
    answer.append(el("p", "error", "Cannot read this file: " + message));
    article.classList.remove("pending");
  }

  async function classify(file) {
    const article = card(file);
    results.append(article);
    const body = new FormData();
    body.append("image", file);
    try {
      const route = form.dataset.explain === "true" ? "explain" : "predict";  // Grad-CAM too
      const response = await fetch("/v1/models/xray:" + route, { method: "POST", body: body });
      const answer = await response.json().catch(() => ({ error: "HTTP " + response.status }));
      if (response.ok) {
        show(article, answer.classes, answer.predictions[0]);
        if (answer.overlays) {
          const overlay = el("img", "xray overlay");
          overlay.alt = "Grad-CAM: where the model looked";
          overlay.src = "data:image/png;base64," + answer.overlays[0];
          article.insertBefore(overlay, article.querySelector(".answer"));
        }
      }
      else fail(article, answer.error || "HTTP " + response.status);
    } catch (err) {
      fail(article, "the server did not answer (" + err + ")");
    }
  }

  // Picking files classifies them at once (change), so Classify (submit) must not send the same
  // files again; and a newer batch (a new pick, a drop) stops an older one from adding cards.
  let batch = 0;
  let classified = null;  // the FileList last classified from the input

  async function classifyAll(files) {
    const mine = ++batch;
    results.replaceChildren();
    delete results.dataset.done;
    document.querySelectorAll("main > .error").forEach((node) => node.remove());
    for (const file of files) {  // one at a time: the order stays the files'
      if (mine !== batch) return;
      await classify(file);
    }
    if (mine === batch) results.dataset.done = String(files.length);
  }

  function classifyInput() {
    if (!input.files.length || input.files === classified) return;
    classified = input.files;
    classifyAll(Array.from(input.files));
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    classifyInput();
  });
  input.addEventListener("change", classifyInput);
  ["dragenter", "dragover"].forEach((type) => drop.addEventListener(type, (event) => {
    event.preventDefault();
    drop.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((type) => drop.addEventListener(type, () => {
    drop.classList.remove("over");
  }));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    const files = Array.from(event.dataTransfer.files || []);
    if (files.length) classifyAll(files);
  });
  form.dataset.enhanced = "true";
})();
