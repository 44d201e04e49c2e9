;;; The insert-scale cases of `stoa bench engine` for CLIPS: N items and a
;;; join that never matches, so every item is stored and indexed, none fires.
(deftemplate item (slot n) (slot done))

(defrule pair
   (item (n ?n) (done yes))
   (item (n ?n) (done no))
   =>)

(deffunction bench-make (?n)
   (loop-for-count (?i 1 ?n) (assert (item (n ?i) (done no)))))
