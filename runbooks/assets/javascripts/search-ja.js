/*
 * pgrunbook: Japanese search queries that match the way pages are indexed.
 *
 * The index splits Japanese text into words in the browser (lunr.ja and
 * TinySegmenter), so "空ファイル" in a page is stored as "空" + "ファイル".
 * A query is not split that way: "空ファイル" then finds nothing. This splits
 * a query where kanji meet katakana, katakana meet hiragana, or Japanese meets
 * Latin letters ("空ファイル" -> "空 ファイル", "権限エラー" -> "権限 エラー"),
 * and leaves kanji with their okurigana together ("取り違え"). Every search
 * term matches as a prefix, so a finer query still finds the coarser words.
 *
 * Loaded under extra.polyfills (after iframe-worker.js): it wraps whatever
 * Worker the page has and rewrites only search queries (message type 2).
 */
(function (root) {
  "use strict";

  function kind(character) {
    if (/[\u4E00-\u9FFF\u3400-\u4DBF\u3005\u3006\u30F6]/.test(character)) return "kanji";
    if (/[\u30A0-\u30FF\u31F0-\u31FF\uFF66-\uFF9F]/.test(character)) return "katakana";
    if (/[\u3040-\u309F]/.test(character)) return "hiragana";
    if (/[A-Za-z0-9_\uFF10-\uFF19\uFF21-\uFF3A\uFF41-\uFF5A]/.test(character)) return "latin";
    return "other";
  }

  var KEEP_TOGETHER = { "kanji>hiragana": true, "hiragana>kanji": true };

  function segmentQuery(query) {
    var out = "";
    var previous = "other";
    for (var i = 0; i < query.length; i++) {
      var character = query.charAt(i);
      var current = kind(character);
      var boundary = previous + ">" + current;
      if (out && previous !== current && previous !== "other" && current !== "other" &&
          !KEEP_TOGETHER[boundary]) {
        out += " ";
      }
      out += character;
      previous = current;
    }
    return out;
  }

  if (typeof module !== "undefined" && module.exports) {
    module.exports = { segmentQuery: segmentQuery };
  }
  if (!root || typeof root.Worker !== "function") {
    return;
  }

  var Base = root.Worker;
  class SegmentingWorker extends Base {
    postMessage(message, transfer) {
      if (message && message.type === 2 && typeof message.data === "string") {
        message = { type: 2, data: segmentQuery(message.data) };
      }
      return transfer === undefined ? super.postMessage(message) : super.postMessage(message, transfer);
    }
  }
  root.Worker = SegmentingWorker;
})(typeof window !== "undefined" ? window : null);
