# ctest host.installed_package: install the build into a fresh prefix, build the consumer project against only
# that prefix (find_package(histream)), run its two programs (host_live switches to PROMPT's embeddings).
file(REMOVE_RECURSE ${WORK})
foreach(step
    "${CMAKE_COMMAND};--install;${BUILD_DIR};--prefix;${WORK}/prefix"
    "${CMAKE_COMMAND};-S;${CONSUMER};-B;${WORK}/build;-DCMAKE_PREFIX_PATH=${WORK}/prefix"
    "${CMAKE_COMMAND};--build;${WORK}/build"
    "${WORK}/build/host_app"
    "${WORK}/build/host_live;${PROMPT}")
  execute_process(COMMAND ${step} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "consumer project: '${step}' failed (${rc})")
  endif()
endforeach()
