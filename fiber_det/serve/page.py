"""The web page served at ``/``: upload an image, type a caption or category names, see the boxes.

Self-contained (inline CSS and JavaScript, system fonts): nothing is fetched from another host.
Boxes are absolutely positioned ``div.box`` elements over the image (in percent of its size, so
they follow the layout), each with a ``span.box-label`` "label score"; the detections are also
listed in ``table#detections``. ``#status`` says what happened, errors included.
"""

__all__ = ["PAGE_HTML"]

PAGE_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>FIBER open-vocabulary detection</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; max-width: 1100px; }
  h1 { font-size: 1.4rem; margin: 0 0 .3rem 0; }
  p.lead { margin: 0 0 1rem 0; color: #555; }
  form { display: grid; grid-template-columns: 9rem 1fr; gap: .5rem .8rem; align-items: center;
         background: #f4f5f7; padding: 1rem; border-radius: 8px; }
  form input[type=text] { width: 100%; box-sizing: border-box; padding: .35rem; }
  form .actions { grid-column: 2; }
  button { padding: .45rem 1.2rem; font-size: 1rem; cursor: pointer; }
  #status { margin: .8rem 0; min-height: 1.3rem; }
  #status.error { color: #b00020; font-weight: 600; }
  #stage { position: relative; display: inline-block; max-width: 100%; line-height: 0; }
  #stage img { width: 640px; max-width: 100%; height: auto; display: block; }
  .box { position: absolute; border: 3px solid; box-sizing: border-box; pointer-events: none; }
  .box-label { position: absolute; left: -3px; top: -1.35rem; line-height: 1.2rem;
               font-size: .8rem; color: #fff; padding: 0 .3rem; white-space: nowrap; }
  table { border-collapse: collapse; margin-top: 1rem; font-size: .9rem; }
  td, th { border-bottom: 1px solid #ddd; padding: .2rem .6rem; text-align: left; }
  .swatch { display: inline-block; width: .8rem; height: .8rem; margin-right: .3rem; }
</style>
</head>
<body>
<h1>FIBER: find anything a text names</h1>
<p class="lead">Upload an image, then type a caption (its noun phrases are grounded) or category
names separated by commas (detection).</p>
<form id="form">
  <label for="image">Image</label>
  <input type="file" id="image" name="image" accept="image/*" required>
  <label for="mode">Prompt type</label>
  <select id="mode" name="mode">
    <option value="categories">Category names (comma-separated)</option>
    <option value="caption">Caption (phrase grounding)</option>
  </select>
  <label for="prompt">Prompt</label>
  <input type="text" id="prompt" name="prompt" placeholder="person, dog, red umbrella">
  <label for="threshold">Score threshold</label>
  <input type="number" id="threshold" name="threshold" min="0" max="1" step="any" value="0.3">
  <div class="actions"><button type="submit" id="submit">Detect</button></div>
</form>
<div id="status"></div>
<div id="stage"><img id="preview" alt=""></div>
<table id="detections"><thead><tr><th>label</th><th>score</th><th>box (x1, y1, x2, y2)</th>
</tr></thead><tbody></tbody></table>
<script>
"use strict";
const COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
                "#9a6324", "#800000", "#469990", "#000075", "#808000"];
const $ = (id) => document.getElementById(id);
let imageData = null;

fetch("/api/info").then((r) => r.json()).then((info) => {
  $("threshold").value = info.default_threshold;
  if (info.fixed_vocabulary) {
    $("mode").value = "categories";
    $("prompt").value = info.fixed_vocabulary.join(", ");
  }
}).catch(() => {});

$("image").addEventListener("change", () => {
  const file = $("image").files[0];
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => { imageData = reader.result; $("preview").src = imageData; clearBoxes(); };
  reader.readAsDataURL(file);
});

function clearBoxes() {
  document.querySelectorAll("#stage .box").forEach((b) => b.remove());
  $("detections").tBodies[0].innerHTML = "";
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function draw(result) {
  clearBoxes();
  const [h, w] = result.image_size;
  const body = $("detections").tBodies[0];
  result.detections.forEach((d) => {
    const color = COLORS[d.label_id % COLORS.length];
    const [x1, y1, x2, y2] = d.box;
    const box = document.createElement("div");
    box.className = "box";
    box.dataset.label = d.label;
    box.dataset.score = d.score;
    box.style.borderColor = color;
    box.style.left = (100 * x1 / w) + "%";
    box.style.top = (100 * y1 / h) + "%";
    box.style.width = (100 * (x2 - x1) / w) + "%";
    box.style.height = (100 * (y2 - y1) / h) + "%";
    const tag = document.createElement("span");
    tag.className = "box-label";
    tag.style.background = color;
    tag.textContent = d.label + " " + d.score.toFixed(2);
    box.appendChild(tag);
    $("stage").appendChild(box);
    const row = body.insertRow();
    row.className = "detection";
    row.insertCell().innerHTML = '<span class="swatch"></span>';
    row.cells[0].firstChild.style.background = color;
    row.cells[0].appendChild(document.createTextNode(d.label));
    row.insertCell().textContent = d.score.toFixed(3);
    row.insertCell().textContent = d.box.map((v) => v.toFixed(1)).join(", ");
  });
  setStatus(result.detections.length + " detection(s) at score >= " + result.threshold +
            " (" + result.elapsed_s + " s)", false);
}

$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!imageData) { setStatus("Choose an image first.", true); return; }
  const text = $("prompt").value;
  const request = { image: imageData, threshold: parseFloat($("threshold").value) };
  if ($("mode").value === "caption") request.caption = text;
  else request.categories = text.split(",").map((s) => s.trim()).filter((s) => s);
  setStatus("Running the model...", false);
  $("submit").disabled = true;
  try {
    const response = await fetch("/api/predict", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(request),
    });
    const result = await response.json();
    if (!response.ok) setStatus("Error " + response.status + ": " + result.error.message, true);
    else draw(result);
  } catch (err) {
    setStatus("The server did not answer: " + err, true);
  } finally {
    $("submit").disabled = false;
  }
});
</script>
</body>
</html>
"""
