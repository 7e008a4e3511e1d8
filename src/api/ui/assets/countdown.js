// Counts the lease expiries down between page loads; the page is complete without it.
(function () {
  var spans = document.querySelectorAll(".countdown");
  var start = Date.now();
  setInterval(function () {
    var gone = Math.floor((Date.now() - start) / 1000);
    spans.forEach(function (s) {
      var left = parseInt(s.dataset.seconds, 10) - gone;
      s.textContent = left > 0 ? left + " s" : "lapsing";
    });
  }, 1000);
})();
