/*
 * pgrunbook: search for the runbook opened from a file server (file://).
 *
 * Browsers refuse `new Worker(url)` for file:// pages, so Material's search
 * worker cannot start there. On file:// only, this replaces `Worker` with a
 * stand-in that runs the worker script in a hidden iframe of the same page:
 * messages both ways, and an `importScripts` that returns a promise (the
 * search worker awaits it). Nothing is loaded from outside the site.
 *
 * mkdocs.yml lists this file under extra.polyfills; Material's offline plugin
 * then adds no iframe-worker script from a CDN, and inlines the search index
 * into search/search_index.js.
 */
(function () {
  "use strict";
  if (location.protocol !== "file:" || typeof EventTarget === "undefined") {
    return;
  }

  var FRAME_RUNTIME =
    "postMessage=function(data){parent.postMessage(data,'*');};" +
    "importScripts=function(){var urls=[].slice.call(arguments);" +
    "return urls.reduce(function(done,url){return done.then(function(){" +
    "return new Promise(function(resolve,reject){" +
    "var tag=document.createElement('script');tag.src=url;" +
    "tag.onload=function(){resolve();};" +
    "tag.onerror=function(){reject(new Error('importScripts: '+url));};" +
    "document.head.appendChild(tag);});});},Promise.resolve());};";

  function attribute(text) {
    return String(text).replace(/&/g, "&amp;").replace(/"/g, "&quot;").replace(/</g, "&lt;");
  }

  class IFrameWorker extends EventTarget {
    constructor(url) {
      super();
      this.onmessage = null;
      this.onerror = null;
      this.url = String(url);
      this.frame = document.createElement("iframe");
      this.frame.hidden = true;
      this.frame.setAttribute("aria-hidden", "true");
      document.body.appendChild(this.frame);

      var scope = this.frame.contentWindow;
      scope.document.open();
      scope.document.write(
        "<!doctype html><html><head><script>" + FRAME_RUNTIME + "<\/script></head><body>" +
        '<script src="' + attribute(this.url) + '"><\/script></body></html>'
      );
      scope.document.close();

      var self = this;
      this.ready = new Promise(function (resolve) {
        if (scope.document.readyState === "complete") {
          resolve();
        } else {
          scope.addEventListener("load", function () { resolve(); });
        }
      });
      this.relay = function (event) {
        if (self.frame.contentWindow && event.source === self.frame.contentWindow) {
          var copy = new MessageEvent("message", { data: event.data });
          self.dispatchEvent(copy);
          if (typeof self.onmessage === "function") {
            self.onmessage(copy);
          }
        }
      };
      window.addEventListener("message", this.relay);
    }

    postMessage(data) {
      var frame = this.frame;
      this.ready.then(function () {
        if (frame.contentWindow) {
          frame.contentWindow.dispatchEvent(new MessageEvent("message", { data: data }));
        }
      });
    }

    terminate() {
      window.removeEventListener("message", this.relay);
      this.frame.remove();
    }
  }

  window.IFrameWorker = IFrameWorker;
  window.Worker = IFrameWorker;
})();
