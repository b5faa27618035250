# ctest host.demo_errors: the C++ host demo's bad-input table. Each row: arguments, the exit code, a fragment of
# its output. A refused run may neither claim to have written a file nor leave one: not at its --out, not at the
# default output in its working folder. Run as cmake -DDEMO=<histream-host-demo> -DWORK=<dir> -P this.
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK}/run)
file(WRITE ${WORK}/a_file "")
set(small "--frames,9,--height,32,--width,32,--schedule,self_forcing")  # arguments are comma-separated in the rows
# --out is checked before any model work, with the package's check_output_file: exit 2 and its message
set(rows
  "help|0|usage: histream-host-demo|--help"
  "frames_suffix|2|--frames takes a positive integer, got '9x'|--frames,9x"
  "frames_space|2|--frames takes a positive integer, got ' 9'|--frames, 9"
  "height_negative|2|--height takes a positive integer, got '-32'|--height,-32"
  "width_overflow|2|--width takes a positive integer|--width,99999999999999999999"
  "seed_negative|2|--seed takes an integer in|--seed,-1"
  "missing_value|2|missing value after --out|--out"
  "unknown_flag|2|unknown argument --bogus|--bogus,1"
  "frames_form|2|num_frames must be a positive integer of the form 4k+1|--frames,8,--height,32,--width,32"
  "frames_form_raw|2|num_frames must be a positive integer of the form 4k+1|--frames,8,--out,${WORK}/refused.rgb"
  "raw_no_folder|2|the folder ${WORK}/nonexist does not exist|${small},--out,${WORK}/nonexist/h.rgb"
  "raw_directory|2|is a directory|${small},--out,${WORK}"
  "raw_under_file|2|a_file is a file, not a folder|${small},--out,${WORK}/a_file/h.rgb"
  "mp4_directory|2|is a directory|${small},--out,${WORK}/run/d.mp4"
  "mp4_under_file|2|a_file is a file, not a folder|${small},--out,${WORK}/a_file/h.mp4"
  "raw_unwritable|2|cannot write output /proc/h.rgb|${small},--out,/proc/h.rgb"
  "tae_missing|2|${WORK}/absent.pth do not exist|${small},--tae,${WORK}/absent.pth,--out,${WORK}/tae.rgb"
  "tae_both|2|give --tae FILE or --tiny-tae, not both|--tiny-tae,--tae,x.pth"
)
file(MAKE_DIRECTORY ${WORK}/run/d.mp4)
set(failures "")
foreach(row IN LISTS rows)
  string(REPLACE "|" ";" parts "${row}")
  list(GET parts 0 name)
  list(GET parts 1 want_rc)
  list(GET parts 2 fragment)
  string(FIND "${row}" "|" p0)
  string(SUBSTRING "${row}" ${p0} -1 rest)
  string(REGEX REPLACE "^\\|[^|]*\\|[^|]*\\|" "" args "${rest}")
  string(REPLACE "," ";" args "${args}")
  execute_process(COMMAND ${DEMO} ${args} WORKING_DIRECTORY ${WORK}/run
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 120)
  set(all "${out}${err}")
  string(FIND "${all}" "${fragment}" at)
  string(FIND "${all}" "wrote " wrote)
  set(left "")
  if(NOT want_rc STREQUAL "0")
    list(FIND args "--out" at_out)
    list(LENGTH args nargs)
    math(EXPR at_out "${at_out} + 1")
    set(outputs ${WORK}/run/histream_host_demo.mp4)  # the default --out
    if(at_out GREATER 0 AND at_out LESS nargs)
      list(GET args ${at_out} given)
      if(NOT IS_DIRECTORY "${given}")  # the rows at a directory refuse it; it was there before
        set(outputs "${given}")
      endif()
    endif()
    foreach(path IN LISTS outputs)
      if(EXISTS "${path}" AND NOT IS_DIRECTORY "${path}")
        string(APPEND left " ${path}")
      endif()
    endforeach()
  endif()
  if(NOT rc STREQUAL want_rc OR at EQUAL -1 OR (NOT want_rc STREQUAL "0" AND NOT wrote EQUAL -1) OR left)
    string(APPEND failures "\n${name}: exit ${rc} (want ${want_rc}), want '${fragment}', files left:${left}, in:\n${all}")
  endif()
endforeach()
if(failures)
  message(FATAL_ERROR "host demo error table:${failures}")
endif()
