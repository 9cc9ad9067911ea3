/**
 * A live line chart on a <canvas>, without a chart library.
 *
 * Redrawing everything on each new value is cheap for 60 points, and simpler
 * than shifting pixels. The canvas is sized in device pixels, so lines stay
 * sharp on a laptop's high-density screen and on a projector alike.
 */
export function drawChart(canvas, values, { capacity = 60, min = 0, max = 100 } = {}) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  canvas.width = Math.round(width * ratio); // setting the size also clears it
  canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);

  const style = getComputedStyle(canvas);
  const pad = 5; // keep the line and the dot inside the canvas at min and max
  const x = (i) => pad + (i * (width - 2 * pad)) / (capacity - 1);
  const y = (v) => height - pad - ((v - min) * (height - 2 * pad)) / (max - min);

  ctx.strokeStyle = style.getPropertyValue("--grid").trim() || "#ccc";
  ctx.lineWidth = 1;
  ctx.beginPath();
  for (const v of [min, (min + max) / 2, max]) {
    ctx.moveTo(0, Math.round(y(v)) + 0.5);
    ctx.lineTo(width, Math.round(y(v)) + 0.5);
  }
  ctx.stroke();

  ctx.strokeStyle = style.color;
  ctx.lineWidth = 2.5;
  ctx.lineJoin = "round";
  ctx.beginPath();
  values.forEach((v, i) => (i ? ctx.lineTo(x(i), y(v)) : ctx.moveTo(x(i), y(v))));
  ctx.stroke();

  // A dot marks the newest value, so the first one shows before there is a line.
  const last = values.length - 1;
  if (last >= 0) {
    ctx.fillStyle = style.color;
    ctx.beginPath();
    ctx.arc(x(last), y(values[last]), 4, 0, 2 * Math.PI);
    ctx.fill();
  }

  canvas.dataset.points = values.length;
}

