/* ssmlens dashboard: "download data (CSV)" for any figure, built in the browser from the
   figure's own traces (plotly.py sends numpy arrays as base64 typed arrays: decoded here). */
(function () {
  var TYPES = {f8: Float64Array, f4: Float32Array, i1: Int8Array, u1: Uint8Array, i2: Int16Array,
               u2: Uint16Array, i4: Int32Array, u4: Uint32Array};

  function decode(v) {
    if (v === undefined || v === null) return null;
    if (Array.isArray(v)) return v.map(function (r) { return (r && r.bdata) ? decode(r) : r; });
    if (typeof v === "object" && v.bdata !== undefined) {
      var bin = atob(v.bdata), bytes = new Uint8Array(bin.length);
      for (var i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
      var flat = Array.from(new (TYPES[v.dtype] || Float64Array)(bytes.buffer));
      if (!v.shape) return flat;
      var shape = String(v.shape).split(",").map(function (s) { return parseInt(s, 10); });
      if (shape.length < 2) return flat;
      var out = [], cols = shape[1];
      for (var r = 0; r < shape[0]; r++) out.push(flat.slice(r * cols, (r + 1) * cols));
      return out;
    }
    return null;
  }

  function cell(v) {
    if (v === null || v === undefined || (typeof v === "number" && isNaN(v))) return "";
    var s = String(v);
    return /[",\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
  }

  function figureCsv(n, fig, id) {
    if (!n || !fig) return window.dash_clientside.no_update;
    var rows = [["trace", "x", "y", "z"]];
    (fig.data || []).forEach(function (t, i) {
      var name = t.name || ((t.type || "trace") + " " + i);
      var x = decode(t.x), y = decode(t.y), z = decode(t.z);
      if (z && Array.isArray(z[0])) {
        z.forEach(function (r, yi) {
          r.forEach(function (v, xi) { rows.push([name, x ? x[xi] : xi, y ? y[yi] : yi, v]); });
        });
      } else if (x || y) {
        var len = Math.max(x ? x.length : 0, y ? y.length : 0);
        for (var k = 0; k < len; k++) {
          var xv = x ? x[k] : k, yv = y ? y[k] : "";
          if (xv === null && yv === null) continue;  // legend-only traces
          rows.push([name, xv, yv, ""]);
        }
      }
    });
    var csv = rows.map(function (r) { return r.map(cell).join(","); }).join("\n");
    return {content: csv, filename: "ssmlens-" + ((id && id.name) || "figure") + ".csv", type: "text/csv"};
  }

  window.dash_clientside = Object.assign({}, window.dash_clientside, {ssmlens: {figureCsv: figureCsv}});
})();
