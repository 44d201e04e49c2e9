;;; The throughput case of `stoa bench engine` for CLIPS: N independent
;;; items, one rule that modifies each once.
(deftemplate item (slot n) (slot done))

(defrule touch
   ?i <- (item (done no))
   =>
   (modify ?i (done yes)))

(deffunction bench-make (?n)
   (loop-for-count (?i 1 ?n) (assert (item (n ?i) (done no)))))
