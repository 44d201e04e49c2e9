;;; Waltz line labelling, the OPS5 benchmark (Nishiyama, UT Austin, 1991),
;;; in CLIPS. The rule set and its stages are the classic ones, as in the
;;; CLIPS distribution of the benchmark (which uses salience so that engines
;;; fire the same number of rules):
;;;
;;;   duplicate -> detect_junctions -> find_initial_boundary
;;;     -> find_second_boundary -> labeling -> plot_remaining_edges -> done
;;;
;;; The data files (bench-data/waltz/waltzN.fct) hold `(stage (value
;;; duplicate))` and the lines; the `begin` rule (stage start, a built-in
;;; 18-line drawing) is kept for completeness and does not fire with them.
;;;
;;; A point is an integer x * 100 + y. The geometry helpers reproduce the
;;; original C code, including its atan2, which subtracts pi whenever x < 0
;;; (named ops5-atan2 here: CLIPS 6.4 has a built-in atan2).

(deftemplate stage    (slot value))
(deftemplate line     (slot p1) (slot p2))
(deftemplate edge     (slot p1) (slot p2) (slot joined) (slot label) (slot plotted))
(deftemplate junction (slot p1) (slot p2) (slot p3) (slot base_point) (slot type))

(defglobal ?*MOD-NUM* = 100)

(deffunction ops5-atan2 (?y ?x)
   (if (> ?x 0) then (return (atan (/ ?y ?x))))
   (if (< ?x 0) then (return (- (atan (/ ?y ?x)) (pi))))
   (if (> ?y 0) then (return (pi)))
   (if (< ?y 0) then (return (- 0 (pi))))
   (return undefined))

(deffunction get-y (?val) (mod ?val ?*MOD-NUM*))

(deffunction get-x (?val) (integer (/ ?val ?*MOD-NUM*)))

(deffunction get-angle (?p1 ?p2)
   (bind ?dx (- (get-x ?p2) (get-x ?p1)))
   (bind ?dy (- (get-y ?p2) (get-y ?p1)))
   (if (= ?dx 0)
      then
      (if (> ?dy 0)
         then (return (/ (pi) 2))
         else (if (< ?dy 0) then (return (/ (pi) -2))))
      else
      (if (= ?dy 0)
         then
         (if (> ?dx 0)
            then (return 0.0)
            else (if (< ?dx 0) then (return (pi))))
         else
         (return (ops5-atan2 ?dy ?dx)))))

;; The smaller angle between the lines base->p1 and base->p2.
(deffunction inscribed-angle (?base ?p1 ?p2)
   (bind ?t (- (get-angle ?base ?p1) (get-angle ?base ?p2)))
   (if (< ?t 0) then (bind ?t (- 0 ?t)))
   (if (> ?t (pi)) then (bind ?t (- (* 2 (pi)) ?t)))
   (if (< ?t 0) then (return (- 0 ?t)))
   (return ?t))

;; Classifies a junction of three edges as tee, fork or arrow and asserts it.
(deffunction make-3-junction (?base ?p1 ?p2 ?p3)
   (bind ?a12 (inscribed-angle ?base ?p1 ?p2))
   (bind ?a13 (inscribed-angle ?base ?p1 ?p3))
   (bind ?a23 (inscribed-angle ?base ?p2 ?p3))
   (bind ?s1213 (+ ?a12 ?a13))
   (bind ?s1223 (+ ?a12 ?a23))
   (bind ?s1323 (+ ?a13 ?a23))
   (if (< ?s1213 ?s1223)
      then
      (if (< ?s1213 ?s1323)
         then (bind ?sum ?s1213) (bind ?shaft ?p1) (bind ?barb1 ?p2) (bind ?barb2 ?p3)
         else (bind ?sum ?s1323) (bind ?shaft ?p3) (bind ?barb1 ?p1) (bind ?barb2 ?p2))
      else
      (if (< ?s1223 ?s1323)
         then (bind ?sum ?s1223) (bind ?shaft ?p2) (bind ?barb1 ?p1) (bind ?barb2 ?p3)
         else (bind ?sum ?s1323) (bind ?shaft ?p3) (bind ?barb1 ?p1) (bind ?barb2 ?p2)))
   (bind ?delta (- ?sum (pi)))
   (if (< ?delta 0) then (bind ?delta (- 0 ?delta)))
   (if (< ?delta 0.001)
      then (bind ?type tee)
      else (if (> ?sum (pi)) then (bind ?type fork) else (bind ?type arrow)))
   (assert (junction (p1 (integer ?barb1)) (p2 (integer ?shaft)) (p3 (integer ?barb2))
                     (base_point (integer ?base)) (type ?type))))

;;; ---- stage start: a built-in drawing (unused with the .fct files) ----

(defrule begin
   ?s <- (stage (value start))
   =>
   (assert (line (p1 0122) (p2 0107)))
   (assert (line (p1 0107) (p2 2207)))
   (assert (line (p1 2207) (p2 3204)))
   (assert (line (p1 3204) (p2 6404)))
   (assert (line (p1 2216) (p2 2207)))
   (assert (line (p1 3213) (p2 3204)))
   (assert (line (p1 2216) (p2 3213)))
   (assert (line (p1 0107) (p2 2601)))
   (assert (line (p1 2601) (p2 7401)))
   (assert (line (p1 6404) (p2 7401)))
   (assert (line (p1 3213) (p2 6413)))
   (assert (line (p1 6413) (p2 6404)))
   (assert (line (p1 7416) (p2 7401)))
   (assert (line (p1 5216) (p2 6413)))
   (assert (line (p1 2216) (p2 5216)))
   (assert (line (p1 0122) (p2 5222)))
   (assert (line (p1 5222) (p2 7416)))
   (assert (line (p1 5222) (p2 5216)))
   (modify ?s (value duplicate)))

;;; ---- stage duplicate: every line becomes two directed edges ----

(defrule reverse_edges
   (stage (value duplicate))
   ?l <- (line (p1 ?p1) (p2 ?p2))
   =>
   (assert (edge (p1 ?p1) (p2 ?p2) (joined false)))
   (assert (edge (p1 ?p2) (p2 ?p1) (joined false)))
   (retract ?l))

(defrule done_reversing
   (declare (salience -10))
   ?s <- (stage (value duplicate))
   (not (line))
   =>
   (modify ?s (value detect_junctions)))

;;; ---- stage detect_junctions: group the edges at each point ----

(defrule make-3_junction
   (declare (salience 10))
   (stage (value detect_junctions))
   ?e1 <- (edge (p1 ?base_point) (p2 ?p1) (joined false))
   ?e2 <- (edge (p1 ?base_point) (p2 ?p2&~?p1) (joined false))
   ?e3 <- (edge (p1 ?base_point) (p2 ?p3&~?p1&~?p2) (joined false))
   =>
   (make-3-junction ?base_point ?p1 ?p2 ?p3)
   (modify ?e1 (joined true))
   (modify ?e2 (joined true))
   (modify ?e3 (joined true)))

(defrule make_L
   (stage (value detect_junctions))
   ?e1 <- (edge (p1 ?base_point) (p2 ?p2) (joined false))
   ?e2 <- (edge (p1 ?base_point) (p2 ?p3&~?p2) (joined false))
   (not (edge (p1 ?base_point) (p2 ~?p2&~?p3)))
   =>
   (assert (junction (type L) (base_point ?base_point) (p1 ?p2) (p2 ?p3)))
   (modify ?e1 (joined true))
   (modify ?e2 (joined true)))

(defrule done_detecting
   (declare (salience -10))
   ?s <- (stage (value detect_junctions))
   (not (edge (joined false)))
   =>
   (modify ?s (value find_initial_boundary)))

;;; ---- boundaries: the junctions with the largest and smallest base point ----

(defrule initial_boundary_junction_L
   ?s <- (stage (value find_initial_boundary))
   (junction (type L) (base_point ?base_point) (p1 ?p1) (p2 ?p2))
   ?e1 <- (edge (p1 ?base_point) (p2 ?p1))
   ?e2 <- (edge (p1 ?base_point) (p2 ?p2))
   (not (junction (base_point ?bp&:(> ?bp ?base_point))))
   =>
   (modify ?e1 (label B))
   (modify ?e2 (label B))
   (modify ?s (value find_second_boundary)))

(defrule initial_boundary_junction_arrow
   ?s <- (stage (value find_initial_boundary))
   (junction (type arrow) (base_point ?bp) (p1 ?p1) (p2 ?p2) (p3 ?p3))
   ?e1 <- (edge (p1 ?bp) (p2 ?p1))
   ?e2 <- (edge (p1 ?bp) (p2 ?p2))
   ?e3 <- (edge (p1 ?bp) (p2 ?p3))
   (not (junction (base_point ?base_point&:(> ?base_point ?bp))))
   =>
   (modify ?e1 (label B))
   (modify ?e2 (label +))
   (modify ?e3 (label B))
   (modify ?s (value find_second_boundary)))

(defrule second_boundary_junction_L
   ?s <- (stage (value find_second_boundary))
   (junction (type L) (base_point ?base_point) (p1 ?p1) (p2 ?p2))
   ?e1 <- (edge (p1 ?base_point) (p2 ?p1))
   ?e2 <- (edge (p1 ?base_point) (p2 ?p2))
   (not (junction (base_point ?bp&:(< ?bp ?base_point))))
   =>
   (modify ?e1 (label B))
   (modify ?e2 (label B))
   (modify ?s (value labeling)))

(defrule second_boundary_junction_arrow
   ?s <- (stage (value find_second_boundary))
   (junction (type arrow) (base_point ?bp) (p1 ?p1) (p2 ?p2) (p3 ?p3))
   ?e1 <- (edge (p1 ?bp) (p2 ?p1))
   ?e2 <- (edge (p1 ?bp) (p2 ?p2))
   ?e3 <- (edge (p1 ?bp) (p2 ?p3))
   (not (junction (base_point ?base_point&:(< ?base_point ?bp))))
   =>
   (modify ?e1 (label B))
   (modify ?e2 (label +))
   (modify ?e3 (label B))
   (modify ?s (value labeling)))

;;; ---- stage labeling: propagate labels through the junction catalogue ----

;; A labelled edge gives its label to the edge running the other way.
(defrule match_edge
   (stage (value labeling))
   ?e1 <- (edge (p1 ?p1) (p2 ?p2) (label ?label& + | - | B))
   ?e2 <- (edge (p1 ?p2) (p2 ?p1) (label nil))
   =>
   (modify ?e1 (plotted t))
   (modify ?e2 (label ?label) (plotted t)))

(defrule label_L
   (stage (value labeling))
   (junction (type L) (base_point ?p1))
   (edge (p1 ?p1) (p2 ?p2) (label + | -))
   ?e <- (edge (p1 ?p1) (p2 ~?p2) (label nil))
   =>
   (modify ?e (label B)))

(defrule label_tee_A
   (declare (salience 5))
   (stage (value labeling))
   (junction (type tee) (base_point ?bp) (p1 ?p1) (p2 ?p2) (p3 ?p3))
   ?e1 <- (edge (p1 ?bp) (p2 ?p1) (label nil))
   ?e2 <- (edge (p1 ?bp) (p2 ?p3))
   =>
   (modify ?e1 (label B))
   (modify ?e2 (label B)))

(defrule label_tee_B
   (stage (value labeling))
   (junction (type tee) (base_point ?bp) (p1 ?p1) (p2 ?p2) (p3 ?p3))
   ?e1 <- (edge (p1 ?bp) (p2 ?p1))
   ?e2 <- (edge (p1 ?bp) (p2 ?p3) (label nil))
   =>
   (modify ?e1 (label B))
   (modify ?e2 (label B)))

(defrule label_fork-1
   (stage (value labeling))
   (junction (type fork) (base_point ?bp))
   (edge (p1 ?bp) (p2 ?p1) (label +))
   ?e1 <- (edge (p1 ?bp) (p2 ?p2&~?p1) (label nil))
   ?e2 <- (edge (p1 ?bp) (p2 ~?p2&~?p1))
   =>
   (modify ?e1 (label +))
   (modify ?e2 (label +)))

(defrule label_fork-2
   (stage (value labeling))
   (junction (type fork) (base_point ?bp))
   (edge (p1 ?bp) (p2 ?p1) (label B))
   (edge (p1 ?bp) (p2 ?p2&~?p1) (label -))
   ?e <- (edge (p1 ?bp) (p2 ~?p2&~?p1) (label nil))
   =>
   (modify ?e (label B)))

(defrule label_fork-3
   (stage (value labeling))
   (junction (type fork) (base_point ?bp))
   (edge (p1 ?bp) (p2 ?p1) (label B))
   (edge (p1 ?bp) (p2 ?p2&~?p1) (label B))
   ?e <- (edge (p1 ?bp) (p2 ~?p2&~?p1) (label nil))
   =>
   (modify ?e (label -)))

(defrule label_fork-4
   (stage (value labeling))
   (junction (type fork) (base_point ?bp))
   (edge (p1 ?bp) (p2 ?p1) (label -))
   (edge (p1 ?bp) (p2 ?p2&~?p1) (label -))
   ?e <- (edge (p1 ?bp) (p2 ~?p2&~?p1) (label nil))
   =>
   (modify ?e (label -)))

(defrule label_arrow-1A
   (declare (salience 5))
   (stage (value labeling))
   (junction (type arrow) (base_point ?bp) (p1 ?p1) (p2 ?p2) (p3 ?p3))
   (edge (p1 ?bp) (p2 ?p1) (label ?label& B | -))
   ?e1 <- (edge (p1 ?bp) (p2 ?p2) (label nil))
   ?e2 <- (edge (p1 ?bp) (p2 ?p3))
   =>
   (modify ?e1 (label +))
   (modify ?e2 (label ?label)))

(defrule label_arrow-1B
   (stage (value labeling))
   (junction (type arrow) (base_point ?bp) (p1 ?p1) (p2 ?p2) (p3 ?p3))
   (edge (p1 ?bp) (p2 ?p1) (label ?label& B | -))
   ?e1 <- (edge (p1 ?bp) (p2 ?p2))
   ?e2 <- (edge (p1 ?bp) (p2 ?p3) (label nil))
   =>
   (modify ?e1 (label +))
   (modify ?e2 (label ?label)))

(defrule label_arrow-2A
   (declare (salience 5))
   (stage (value labeling))
   (junction (type arrow) (base_point ?bp) (p1 ?p1) (p2 ?p2) (p3 ?p3))
   (edge (p1 ?bp) (p2 ?p3) (label ?label& B | -))
   ?e1 <- (edge (p1 ?bp) (p2 ?p2) (label nil))
   ?e2 <- (edge (p1 ?bp) (p2 ?p1))
   =>
   (modify ?e1 (label +))
   (modify ?e2 (label ?label)))

(defrule label_arrow-2B
   (stage (value labeling))
   (junction (type arrow) (base_point ?bp) (p1 ?p1) (p2 ?p2) (p3 ?p3))
   (edge (p1 ?bp) (p2 ?p3) (label ?label& B | -))
   ?e1 <- (edge (p1 ?bp) (p2 ?p2))
   ?e2 <- (edge (p1 ?bp) (p2 ?p1) (label nil))
   =>
   (modify ?e1 (label +))
   (modify ?e2 (label ?label)))

(defrule label_arrow-3A
   (declare (salience 5))
   (stage (value labeling))
   (junction (type arrow) (base_point ?bp) (p1 ?p1) (p2 ?p2) (p3 ?p3))
   (edge (p1 ?bp) (p2 ?p1) (label +))
   ?e1 <- (edge (p1 ?bp) (p2 ?p2) (label nil))
   ?e2 <- (edge (p1 ?bp) (p2 ?p3))
   =>
   (modify ?e1 (label -))
   (modify ?e2 (label +)))

(defrule label_arrow-3B
   (stage (value labeling))
   (junction (type arrow) (base_point ?bp) (p1 ?p1) (p2 ?p2) (p3 ?p3))
   (edge (p1 ?bp) (p2 ?p1) (label +))
   ?e1 <- (edge (p1 ?bp) (p2 ?p2))
   ?e2 <- (edge (p1 ?bp) (p2 ?p3) (label nil))
   =>
   (modify ?e1 (label -))
   (modify ?e2 (label +)))

(defrule label_arrow-4A
   (declare (salience 5))
   (stage (value labeling))
   (junction (type arrow) (base_point ?bp) (p1 ?p1) (p2 ?p2) (p3 ?p3))
   (edge (p1 ?bp) (p2 ?p3) (label +))
   ?e1 <- (edge (p1 ?bp) (p2 ?p2) (label nil))
   ?e2 <- (edge (p1 ?bp) (p2 ?p1))
   =>
   (modify ?e1 (label -))
   (modify ?e2 (label +)))

(defrule label_arrow-4B
   (stage (value labeling))
   (junction (type arrow) (base_point ?bp) (p1 ?p1) (p2 ?p2) (p3 ?p3))
   (edge (p1 ?bp) (p2 ?p3) (label +))
   ?e1 <- (edge (p1 ?bp) (p2 ?p2))
   ?e2 <- (edge (p1 ?bp) (p2 ?p1) (label nil))
   =>
   (modify ?e1 (label -))
   (modify ?e2 (label +)))

(defrule label_arrow-5A
   (declare (salience 5))
   (stage (value labeling))
   (junction (type arrow) (base_point ?bp) (p1 ?p1) (p2 ?p2) (p3 ?p3))
   (edge (p1 ?bp) (p2 ?p2) (label -))
   ?e1 <- (edge (p1 ?bp) (p2 ?p1))
   ?e2 <- (edge (p1 ?bp) (p2 ?p3) (label nil))
   =>
   (modify ?e1 (label +))
   (modify ?e2 (label +)))

(defrule label_arrow-5B
   (stage (value labeling))
   (junction (type arrow) (base_point ?bp) (p1 ?p1) (p2 ?p2) (p3 ?p3))
   (edge (p1 ?bp) (p2 ?p2) (label -))
   ?e1 <- (edge (p1 ?bp) (p2 ?p1) (label nil))
   ?e2 <- (edge (p1 ?bp) (p2 ?p3))
   =>
   (modify ?e1 (label +))
   (modify ?e2 (label +)))

;; Lowest salience: runs when no labelling rule can fire any more.
(defrule done_labeling
   (declare (salience -10))
   ?s <- (stage (value labeling))
   =>
   (modify ?s (value plot_remaining_edges)))

;;; ---- stage plot_remaining_edges ----

(defrule plot_remaining
   (stage (value plot_remaining_edges))
   ?e <- (edge (plotted nil) (label ?label&~nil) (p1 ?p1) (p2 ?p2))
   =>
   (modify ?e (plotted t)))

;; An edge nobody could label is taken to be a boundary (the original's kludge).
(defrule plot_boundaries
   (stage (value plot_remaining_edges))
   ?e <- (edge (plotted nil) (label nil) (p1 ?p1) (p2 ?p2))
   =>
   (modify ?e (plotted t)))

(defrule done_plotting
   (declare (salience -10))
   ?s <- (stage (value plot_remaining_edges))
   (not (edge (plotted nil)))
   =>
   (modify ?s (value done)))
